# DNS: <region>.api.<domain> for each region's ALB (the gateways' regions[].url, checked by
# Route 53 on /readyz), and api.<domain> from `geogate dns export --format route53`: geolocation
# records into chains of failover records in the router's region order (README, One global
# hostname). A region's A link (GeogateRegion) becomes an alias to that region's ALB, whose
# addresses change: the regions have no addresses in the gateways' config, and the export,
# with --alias-regions, writes their links without any, for this file to fill in. The ALBs
# are IPv4 only (modules/region/alb.tf sets no ip_address_type), so A links only.
#
# route53.json is made from the output dns_export_config (the gateways' config, rendered):
#   terraform apply -var geodns_file=     # the first time: everything but api.<domain>
#   terraform output -raw dns_export_config > dns-export.toml
#   geogate dns export --config dns-export.toml --format route53 --alias-regions \
#     --zone <domain> --name api --out route53.json
#   terraform apply

locals {
  albs = {
    "eu-central"   = { dns_name = module.eu_central.alb_dns_name, zone_id = module.eu_central.alb_zone_id }
    "us-east"      = { dns_name = module.us_east.alb_dns_name, zone_id = module.us_east.alb_zone_id }
    "ap-southeast" = { dns_name = module.ap_southeast.alb_dns_name, zone_id = module.ap_southeast.alb_zone_id }
  }
  # geodns_file = "": no global name yet (the first apply, before the export).
  geodns = jsondecode(var.geodns_file == "" ? "{\"health_checks\": {}, \"record_sets\": []}" : file("${path.module}/${var.geodns_file}"))
}

resource "aws_route53_record" "regional" {
  #checkov:skip=CKV2_AWS_23:it is attached: an alias to the region's ALB, a module output checkov does not follow
  provider = aws.eu
  for_each = local.albs
  zone_id  = var.zone_id
  name     = "${each.key}.api.${var.domain}"
  type     = "A"
  alias {
    name                   = each.value.dns_name
    zone_id                = each.value.zone_id
    evaluate_target_health = true
  }
}

resource "aws_route53_health_check" "region" {
  provider          = aws.eu
  for_each          = local.geodns.health_checks
  type              = each.value.Type
  fqdn              = try(each.value.FullyQualifiedDomainName, null)
  ip_address        = try(each.value.IPAddress, null)
  port              = each.value.Port
  resource_path     = each.value.ResourcePath
  request_interval  = each.value.RequestInterval
  failure_threshold = each.value.FailureThreshold
  enable_sni        = try(each.value.EnableSNI, null)
  tags              = merge(var.tags, { Name = "geogate-${each.key}-readyz" })
}

resource "aws_route53_record" "geodns" {
  provider = aws.eu
  for_each = { for r in local.geodns.record_sets : "${r.Name} ${r.Type} ${try(r.SetIdentifier, "")}" => r }

  zone_id         = var.zone_id
  name            = each.value.Name
  type            = each.value.Type
  set_identifier  = try(each.value.SetIdentifier, null)
  health_check_id = try(aws_route53_health_check.region[each.value.HealthCheck].id, null)
  # A region's link: an alias to its ALB (A records only; an AAAA link keeps its addresses).
  ttl     = try(local.albs[each.value.GeogateRegion], null) != null && each.value.Type == "A" ? null : try(each.value.TTL, null)
  records = try(local.albs[each.value.GeogateRegion], null) != null && each.value.Type == "A" ? null : try([for v in each.value.ResourceRecords : v.Value], null)

  dynamic "geolocation_routing_policy" {
    for_each = try([each.value.GeoLocation], [])
    content {
      continent = try(geolocation_routing_policy.value.ContinentCode, null)
      country   = try(geolocation_routing_policy.value.CountryCode, null)
    }
  }
  dynamic "failover_routing_policy" {
    for_each = try([each.value.Failover], [])
    content {
      type = failover_routing_policy.value
    }
  }
  dynamic "alias" {
    for_each = try([each.value.AliasTarget], [])
    content {
      name                   = alias.value.DNSName
      zone_id                = var.zone_id
      evaluate_target_health = alias.value.EvaluateTargetHealth
    }
  }
  dynamic "alias" {
    for_each = try(local.albs[each.value.GeogateRegion], null) != null && each.value.Type == "A" ? [local.albs[each.value.GeogateRegion]] : []
    content {
      name                   = alias.value.dns_name
      zone_id                = alias.value.zone_id
      evaluate_target_health = true
    }
  }

  lifecycle {
    # An alias region's link has no addresses: only an ALB of this example can answer it.
    precondition {
      condition     = can(each.value.ResourceRecords) || can(each.value.AliasTarget) || (try(local.albs[each.value.GeogateRegion], null) != null && each.value.Type == "A")
      error_message = "${var.geodns_file}: ${each.value.Name} ${each.value.Type} has no addresses and no ALB here to alias (its region: ${try(each.value.GeogateRegion, "none")}; this example's: ${join(", ", keys(local.albs))}): export again from the output dns_export_config."
    }
  }
}
