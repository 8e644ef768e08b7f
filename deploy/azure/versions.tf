terraform {
  required_version = ">= 1.5.0"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.0"
    }
  }
}

provider "azurerm" {
  features {}

  # azurerm 4.x needs the subscription: this variable, or ARM_SUBSCRIPTION_ID when it is null.
  subscription_id = var.subscription_id
}
