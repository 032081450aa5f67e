# Bakes an AMI with embark, its configuration and its systemd units, from the repository root:
#   make static && packer build -var region=eu-west-1 packer/
#   packer build -var arch=arm64 -var embark_binary=dist/embark-aarch64 packer/     (Graviton)
# Paths are relative to this template (${path.root}), so it runs from any directory.
# The last provisioner runs `embark check --image`: the build fails if the image could not boot.

variable "region" {
  type        = string
  default     = "eu-west-1"
  description = "Region to build in (the AMI is created there)."
}

variable "arch" {
  type        = string
  default     = "x86_64"
  description = "x86_64 or arm64 (Graviton): picks the base AMI, the instance type and the binary's default path."
}

variable "base_ami_name" {
  type        = string
  default     = ""
  description = "Name filter of the base AMI (the newest match is used); default: AL2023 of the architecture."
}

variable "base_ami_owner" {
  type        = string
  default     = "amazon"
  description = "Owner of the base AMI."
}

variable "ssh_username" {
  type    = string
  default = "ec2-user"
}

variable "instance_type" {
  type        = string
  default     = ""
  description = "Builder instance type; default t3.small (x86_64) or t4g.small (arm64)."
}

variable "embark_binary" {
  type        = string
  default     = ""
  description = "The static embark binary of the architecture; default: what make static builds for it."
}

variable "embark_config" {
  type        = string
  default     = ""
  description = "The /etc/embark/embark.toml of the image (an empty file: all defaults plus the group's tags)."
}

variable "install_cloudwatch_agent" {
  type        = bool
  default     = false
  description = "Install the unified CloudWatch agent into the image (for [[logs.files]], embark logs sync)."
}

locals {
  arm           = var.arch == "arm64"
  rust_target   = local.arm ? "aarch64-unknown-linux-gnu" : "x86_64-unknown-linux-gnu"
  base_ami_name = var.base_ami_name != "" ? var.base_ami_name : "al2023-ami-2023.*-${local.arm ? "arm64" : "x86_64"}"
  instance_type = var.instance_type != "" ? var.instance_type : (local.arm ? "t4g.small" : "t3.small")
  embark_binary = var.embark_binary != "" ? var.embark_binary : "${path.root}/../target/${local.rust_target}/release/embark"
  embark_config = var.embark_config != "" ? var.embark_config : "${path.root}/embark.toml"
}

source "amazon-ebs" "embark" {
  region        = var.region
  instance_type = local.instance_type
  ssh_username  = var.ssh_username
  ami_name      = "embark-{{timestamp}}"

  source_ami_filter {
    filters = {
      name                = local.base_ami_name
      architecture        = local.arm ? "arm64" : "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = [var.base_ami_owner]
    most_recent = true
  }

  tags = {
    Name    = "embark"
    Builder = "packer"
  }
}

build {
  sources = ["source.amazon-ebs.embark"]

  provisioner "file" {
    source      = local.embark_binary
    destination = "/tmp/embark"
  }

  provisioner "file" {
    source      = local.embark_config
    destination = "/tmp/embark.toml"
  }

  provisioner "file" {
    source      = "${path.root}/embark-boot.service"
    destination = "/tmp/embark-boot.service"
  }

  provisioner "file" {
    source      = "${path.root}/embark-watch.service"
    destination = "/tmp/embark-watch.service"
  }

  provisioner "shell" {
    script           = "${path.root}/install.sh"
    execute_command  = "sudo -E bash '{{ .Path }}'"
    environment_vars = ["INSTALL_CLOUDWATCH_AGENT=${var.install_cloudwatch_agent}"]
  }

  provisioner "shell" {
    inline = ["sudo /usr/local/bin/embark check --image"]
  }
}
