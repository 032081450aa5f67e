"""embark's AWS emulator: moto's server plus IMDSv2, lifecycle hooks, fault injection and seeding."""
