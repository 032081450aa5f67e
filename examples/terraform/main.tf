# An embark fleet: launch template with embark's user data, a group whose tags drive embark, a launching
# lifecycle hook, a pool of Elastic IPs, an EFS file system, the release bucket, SNS topics and the
# instance profile with the policy `embark iam-policy` prints. A starting point, not a module: read it,
# change the names, and `terraform plan`.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}

provider "aws" {
  region = var.region
}

locals {
  source_url = "s3://${aws_s3_bucket.deploy.bucket}/${var.name}"
}

# ---- the release bucket (embark release push writes, instances read) ----
resource "aws_s3_bucket" "deploy" {
  bucket = var.bucket
}

resource "aws_s3_bucket_public_access_block" "deploy" {
  bucket                  = aws_s3_bucket.deploy.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

# ---- notifications ----
resource "aws_sns_topic" "ok" {
  name = "${var.name}-deploy-ok"
}

resource "aws_sns_topic" "error" {
  name = "${var.name}-deploy-error"
}

# ---- the Elastic IP pool: addresses tagged embark:pool=<name> ----
resource "aws_eip" "pool" {
  count  = var.pool_size
  domain = "vpc"
  tags = {
    Name          = "${var.name}-${count.index}"
    "embark:pool" = var.name
  }
}

# ---- EFS, one mount target per subnet ----
resource "aws_efs_file_system" "shared" {
  creation_token = "${var.name}-shared"
  encrypted      = true
  tags           = { Name = "${var.name}-shared" }
}

resource "aws_security_group" "efs" {
  name   = "${var.name}-efs"
  vpc_id = var.vpc_id
  ingress {
    description     = "NFS from the fleet"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = [aws_security_group.fleet.id]
  }
}

resource "aws_efs_mount_target" "shared" {
  for_each        = toset(var.subnet_ids)
  file_system_id  = aws_efs_file_system.shared.id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs.id]
}

resource "aws_security_group" "fleet" {
  name   = "${var.name}-fleet"
  vpc_id = var.vpc_id
  ingress {
    from_port   = 80
    to_port     = 80
    protocol    = "tcp"
    cidr_blocks = ["0.0.0.0/0"]
  }
  egress {
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

# ---- the instance profile, with the policy from `embark iam-policy` ----
data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "fleet" {
  name               = "${var.name}-fleet"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

# The policy `embark iam-policy` prints for exactly this stack's pool, file system, source, group and
# topics, generated at plan time (needs embark and jq where terraform runs; the external data source
# takes a flat object of strings, hence the policy as one JSON string).
data "external" "embark_policy" {
  program = ["sh", "-c", <<-EOT
    embark iam-policy --pool '${var.name}' --efs '${aws_efs_file_system.shared.id}' \
      --release '${local.source_url}' --group '${var.name}' \
      --topic '${aws_sns_topic.ok.arn}' --topic '${aws_sns_topic.error.arn}' \
      | jq -c '{policy: tojson}'
  EOT
  ]
}

resource "aws_iam_role_policy" "embark" {
  name   = "embark"
  role   = aws_iam_role.fleet.id
  policy = data.external.embark_policy.result.policy
}

resource "aws_iam_instance_profile" "fleet" {
  name = "${var.name}-fleet"
  role = aws_iam_role.fleet.name
}

# ---- launch template: the image baked by packer/, user data that runs embark boot ----
resource "aws_launch_template" "fleet" {
  name_prefix            = "${var.name}-"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.fleet.id]
  # An image baked by packer/ runs embark from embark-boot.service at every start; the user-data script
  # is for images without it. Never both: that would boot twice.
  user_data = var.image_runs_embark ? null : filebase64("${path.module}/../../userdata/boot.sh")

  iam_instance_profile {
    arn = aws_iam_instance_profile.fleet.arn
  }

  # IMDSv2 only, and the group's tags visible in IMDS (embark reads tags/instance).
  metadata_options {
    http_endpoint          = "enabled"
    http_tokens            = "required"
    instance_metadata_tags = "enabled"
  }
}

# ---- the group: its tags are embark's per-group rules ----
resource "aws_autoscaling_group" "fleet" {
  name                = var.name
  min_size            = var.min_size
  max_size            = var.max_size
  vpc_zone_identifier = var.subnet_ids
  health_check_type   = "ELB"

  launch_template {
    id      = aws_launch_template.fleet.id
    version = "$Latest"
  }

  # embark completes this hook with CONTINUE when the instance is ready, ABANDON when it is not.
  # (Other teams' launching hooks on the same group need [health] lifecycle_hook = "<this name>".)
  initial_lifecycle_hook {
    name                 = "${var.name}-launching"
    lifecycle_transition = "autoscaling:EC2_INSTANCE_LAUNCHING"
    heartbeat_timeout    = 300
    default_result       = "ABANDON"
  }

  # embark drain (the deploy agent, or the boot unit's ExecStop) completes this one after leaving the
  # target groups and running the stop hooks; for a terminating hook ABANDON does the same as CONTINUE.
  initial_lifecycle_hook {
    name                 = "${var.name}-terminating"
    lifecycle_transition = "autoscaling:EC2_INSTANCE_TERMINATING"
    heartbeat_timeout    = 300
    default_result       = "CONTINUE"
  }

  dynamic "tag" {
    for_each = {
      "embark:eip-pool"     = var.name
      "embark:eip-required" = "true"
      "embark:eip-wait"     = "2m"
      "embark:eip-reserve"  = "1"
      "embark:efs"          = "${aws_efs_file_system.shared.id}:/=/var/www/shared"
      "embark:release"      = local.source_url
      "embark:role"         = var.role
    }
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }

  depends_on = [aws_efs_mount_target.shared]
}

output "release_source" {
  value       = local.source_url
  description = "embark release push DIR --to <this>"
}

output "topics" {
  value = {
    ok    = aws_sns_topic.ok.arn
    error = aws_sns_topic.error.arn
  }
}
