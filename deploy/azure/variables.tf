variable "subscription_id" {
  description = "Azure subscription for every resource here. null: take it from ARM_SUBSCRIPTION_ID."
  type        = string
  default     = null
}

variable "dns_zone_name" {
  description = "Existing Azure DNS zone (the parent) that delegates to geosteer, e.g. example.com."
  type        = string
  default     = "example.com"
}

variable "dns_zone_resource_group_name" {
  description = "Resource group of the parent Azure DNS zone."
  type        = string
}

variable "delegated_label" {
  description = "Label of the zone geosteer serves, below the parent: geo → geo.example.com (deploy/kubernetes/base/zones/geo.example.com.zone)."
  type        = string
  default     = "geo"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.delegated_label))
    error_message = "delegated_label must be one DNS label (lower case letters, digits, hyphens)."
  }
}

variable "steered_label" {
  description = "Profile name in the delegated zone: mqtt → mqtt.geo.example.com (the [[profile]] name in geo.example.com.toml)."
  type        = string
  default     = "mqtt"
}

variable "service_cname_label" {
  description = "Hostname clients use, in the parent zone, made a CNAME to the steered name (mqtt.example.com → mqtt.geo.example.com). null: leave it alone (e.g. while it still points at Traffic Manager; see deploy/README.md, Cutover)."
  type        = string
  default     = "mqtt"
}

variable "service_cname_ttl" {
  description = "TTL of the service CNAME, seconds."
  type        = number
  default     = 300
}

variable "nameserver_prefix" {
  description = "Name server host names are <prefix><ns_number>.<dns_zone_name> (geosteer-ns1.example.com …): siblings of the delegated zone in the parent, so the delegation needs no glue."
  type        = string
  default     = "geosteer-ns"
}

variable "ns_ttl" {
  description = "TTL of the delegation's NS record set and the name servers' A records, seconds."
  type        = number
  default     = 3600
}

variable "regions" {
  description = <<-EOT
    One entry per Azure region running a geosteer deployment (an AKS cluster with the
    deploy/kubernetes overlay of the same name). Each gets a static, zone-redundant Standard
    public IP for its LoadBalancer Service and one name server name, <prefix><ns_number>.
      location                  Azure location of the AKS cluster (the public IP must be there)
      ns_number                 1..N, unique: the name server's number
      resource_group_name       resource group of the public IP; default rg-geosteer-<key>
      create_resource_group     create that resource group (false: it exists, e.g. the AKS node resource group)
      public_ip_name            default pip-geosteer-<key> (the overlay's azure-pip-name annotation)
      zones                     availability zones of the IP; ["1","2","3"] = zone-redundant
      aks_identity_principal_id the AKS cluster identity's principal ID: granted Network
                                Contributor on the resource group so the cloud provider can
                                attach the IP to its load balancer (null: grant it yourself)
  EOT
  type = map(object({
    location                  = string
    ns_number                 = number
    resource_group_name       = optional(string)
    create_resource_group     = optional(bool, true)
    public_ip_name            = optional(string)
    zones                     = optional(list(string), ["1", "2", "3"])
    aks_identity_principal_id = optional(string)
  }))
  default = {
    westeurope = {
      location  = "westeurope"
      ns_number = 1
    }
    eastus = {
      location  = "eastus"
      ns_number = 2
    }
    southeastasia = {
      location  = "southeastasia"
      ns_number = 3
    }
  }

  validation {
    condition     = length(var.regions) >= 2
    error_message = "Give at least two regions: a delegation to a single name server address has no redundancy."
  }

  validation {
    condition     = length(distinct([for r in values(var.regions) : r.ns_number])) == length(var.regions)
    error_message = "ns_number must be unique across regions."
  }
}

variable "tags" {
  description = "Tags on every resource created here."
  type        = map(string)
  default = {
    app = "geosteer"
  }
}
