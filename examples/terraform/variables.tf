variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "name" {
  type        = string
  default     = "web"
  description = "The group's name; also its pool, its role and the release prefix."
}

variable "role" {
  type        = string
  default     = "web"
  description = "embark:role: selects role-specific release hooks (web, cron, worker…)."
}

variable "bucket" {
  type        = string
  description = "The release bucket's name."
}

variable "vpc_id" {
  type = string
}

variable "subnet_ids" {
  type        = list(string)
  description = "One subnet per zone; EFS gets a mount target in each."
}

variable "ami_id" {
  type        = string
  description = "The image baked with packer/ (embark, its units and config)."
}

variable "instance_type" {
  type    = string
  default = "t3.small"
}

variable "pool_size" {
  type        = number
  default     = 4
  description = "Elastic IPs in the pool: at least max_size, plus spares for rolling replacements."
}

variable "min_size" {
  type    = number
  default = 2
}

variable "max_size" {
  type    = number
  default = 3
}

variable "image_runs_embark" {
  type        = bool
  default     = true
  description = "The AMI was baked by packer/ (embark-boot.service runs embark): no user-data then."
}
