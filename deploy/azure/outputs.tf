output "public_ips" {
  description = "Static public IP per region."
  value       = { for k, ip in azurerm_public_ip.ns : k => ip.ip_address }
}

output "nameservers" {
  description = "Name server host name per region (A record in the parent zone → that region's public IP)."
  value       = local.ns_fqdn
}

output "delegation" {
  description = "The NS record set of the delegated zone, in name server order."
  value = {
    zone        = local.delegated_zone
    nameservers = [for k in local.region_order : "${local.ns_fqdn[k]}."]
  }
}

output "steered_name" {
  description = "The name geosteer steers (mqtt.geo.example.com)."
  value       = local.steered_name
}

output "service_annotations" {
  description = "Annotations for each region's Service geosteer-dns (deploy/kubernetes/overlays/<region>/service-dns.yaml)."
  value = {
    for k in keys(var.regions) : k => {
      "service.beta.kubernetes.io/azure-pip-name"                     = azurerm_public_ip.ns[k].name
      "service.beta.kubernetes.io/azure-load-balancer-resource-group" = azurerm_public_ip.ns[k].resource_group_name
    }
  }
}

output "zone_file_ns_records" {
  description = "NS lines for the apex of the geosteer zone file."
  value       = join("\n", [for k in local.region_order : "        IN NS   ${local.ns_fqdn[k]}."])
}

output "verify_commands" {
  description = "Ask each name server directly for the steered name, as a London, a US and a Tokyo client."
  value = flatten([
    for k in local.region_order : [
      for subnet in ["81.2.69.0/24", "216.160.83.0/24", "1.0.16.0/24"] :
      "dig @${azurerm_public_ip.ns[k].ip_address} ${local.steered_name} A +norec +subnet=${subnet}"
    ]
  ])
}
