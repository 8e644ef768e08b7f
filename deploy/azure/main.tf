# geosteer on Azure: the per-region static public IPs the geosteer LoadBalancer Services use,
# and the delegation of <delegated_label>.<dns_zone_name> from the parent Azure DNS zone to
# them.
#
#   example.com (Azure DNS, existing)
#     geo                    NS     geosteer-ns1.example.com. geosteer-ns2.example.com. …
#     geosteer-ns1           A      <westeurope public IP>
#     geosteer-ns2           A      <eastus public IP>
#     geosteer-ns3           A      <southeastasia public IP>
#     mqtt                   CNAME  mqtt.geo.example.com.        (optional: the cutover)
#
# Each public IP fronts that region's geosteer replicas (Azure Standard Load Balancer created
# by AKS for the Service geosteer-dns, annotations from output service_annotations).

data "azurerm_client_config" "current" {}

data "azurerm_dns_zone" "parent" {
  name                = var.dns_zone_name
  resource_group_name = var.dns_zone_resource_group_name
}

locals {
  rg_name  = { for k, r in var.regions : k => coalesce(r.resource_group_name, "rg-geosteer-${k}") }
  pip_name = { for k, r in var.regions : k => coalesce(r.public_ip_name, "pip-geosteer-${k}") }
  ns_label = { for k, r in var.regions : k => "${var.nameserver_prefix}${r.ns_number}" }
  ns_fqdn  = { for k, r in var.regions : k => "${local.ns_label[k]}.${var.dns_zone_name}" }

  # Regions in name server order (ns1, ns2, …).
  region_order = [for n in sort([for k, r in var.regions : format("%04d/%s", r.ns_number, k)]) : split("/", n)[1]]

  delegated_zone = "${var.delegated_label}.${var.dns_zone_name}"
  steered_name   = "${var.steered_label}.${local.delegated_zone}"
}

resource "azurerm_resource_group" "region" {
  for_each = { for k, r in var.regions : k => r if r.create_resource_group }

  name     = local.rg_name[each.key]
  location = each.value.location
  tags     = var.tags
}

# Static, zone-redundant Standard SKU public IP per region. Standard is required by the
# Standard Load Balancer AKS uses; the address must never change while the parent zone
# delegates to it, hence prevent_destroy (remove it deliberately to tear down).
resource "azurerm_public_ip" "ns" {
  for_each = var.regions

  name                    = local.pip_name[each.key]
  location                = each.value.location
  resource_group_name     = local.rg_name[each.key]
  allocation_method       = "Static"
  sku                     = "Standard"
  sku_tier                = "Regional"
  ip_version              = "IPv4"
  zones                   = each.value.zones
  idle_timeout_in_minutes = 4
  tags                    = merge(var.tags, { "geosteer-region" = each.key, "geosteer-nameserver" = local.ns_fqdn[each.key] })

  depends_on = [azurerm_resource_group.region]

  lifecycle {
    prevent_destroy = true
  }
}

# The AKS cloud provider attaches the IP to the cluster's load balancer: its identity needs
# Network Contributor on the IP's resource group (when that is not the node resource group).
resource "azurerm_role_assignment" "aks_network_contributor" {
  for_each = { for k, r in var.regions : k => r if r.aks_identity_principal_id != null }

  scope                = "/subscriptions/${data.azurerm_client_config.current.subscription_id}/resourceGroups/${local.rg_name[each.key]}"
  role_definition_name = "Network Contributor"
  principal_id         = each.value.aks_identity_principal_id

  depends_on = [azurerm_resource_group.region]
}

# Address records of the name servers, in the parent zone (what the delegation points at).
resource "azurerm_dns_a_record" "nameserver" {
  for_each = var.regions

  name                = local.ns_label[each.key]
  zone_name           = data.azurerm_dns_zone.parent.name
  resource_group_name = data.azurerm_dns_zone.parent.resource_group_name
  ttl                 = var.ns_ttl
  records             = [azurerm_public_ip.ns[each.key].ip_address]
  tags                = var.tags
}

# The delegation: <delegated_label>.<parent> is served by the geosteer name servers. Keep
# the NS records in deploy/kubernetes/base/zones/geo.example.com.zone equal to this set.
resource "azurerm_dns_ns_record" "delegation" {
  name                = var.delegated_label
  zone_name           = data.azurerm_dns_zone.parent.name
  resource_group_name = data.azurerm_dns_zone.parent.resource_group_name
  ttl                 = var.ns_ttl
  records             = [for k in local.region_order : "${local.ns_fqdn[k]}."]
  tags                = var.tags

  # Delegate only once every name server has an address.
  depends_on = [azurerm_dns_a_record.nameserver]
}

# The hostname clients use → the steered name (Traffic Manager's CNAME, now to geosteer).
resource "azurerm_dns_cname_record" "service" {
  count = var.service_cname_label == null ? 0 : 1

  name                = var.service_cname_label
  zone_name           = data.azurerm_dns_zone.parent.name
  resource_group_name = data.azurerm_dns_zone.parent.resource_group_name
  ttl                 = var.service_cname_ttl
  record              = "${local.steered_name}."
  tags                = var.tags

  depends_on = [azurerm_dns_ns_record.delegation]
}
