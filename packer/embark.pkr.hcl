# Bakes an AMI with embark, its configuration and its systemd units:
#   packer build -var region=eu-west-1 -var embark_binary=../target/x86_64-unknown-linux-gnu/release/embark packer/
# The last provisioner runs `embark check --image`: the build fails if the image could not boot.

variable "region" {
  type        = string
  default     = "eu-west-1"
  description = "Region to build in (the AMI is created there)."
}

variable "base_ami_name" {
  type        = string
  default     = "al2023-ami-2023.*-x86_64"
  description = "Name filter of the base AMI (the newest match is used)."
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
  type    = string
  default = "t3.small"
}

variable "embark_binary" {
  type        = string
  default     = "../target/x86_64-unknown-linux-gnu/release/embark"
  description = "The static embark binary (make static)."
}

variable "embark_config" {
  type        = string
  default     = "embark.toml"
  description = "The /etc/embark/embark.toml of the image (an empty file: all defaults plus the group's tags)."
}

source "amazon-ebs" "embark" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = var.ssh_username
  ami_name      = "embark-{{timestamp}}"

  source_ami_filter {
    filters = {
      name                = var.base_ami_name
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
    source      = var.embark_binary
    destination = "/tmp/embark"
  }

  provisioner "file" {
    source      = var.embark_config
    destination = "/tmp/embark.toml"
  }

  provisioner "file" {
    source      = "embark-boot.service"
    destination = "/tmp/embark-boot.service"
  }

  provisioner "file" {
    source      = "embark-watch.service"
    destination = "/tmp/embark-watch.service"
  }

  provisioner "shell" {
    script          = "install.sh"
    execute_command = "sudo -E bash '{{ .Path }}'"
  }

  provisioner "shell" {
    inline = ["sudo /usr/local/bin/embark check --image"]
  }
}
