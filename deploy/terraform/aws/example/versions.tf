terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40"
    }
  }
}

# One provider per AWS region; Route 53 and the Global Datastore are global but managed from
# the primary region's provider.
provider "aws" {
  alias  = "eu"
  region = var.regions["eu-central"].aws_region
}

provider "aws" {
  alias  = "us"
  region = var.regions["us-east"].aws_region
}

provider "aws" {
  alias  = "ap"
  region = var.regions["ap-southeast"].aws_region
}
