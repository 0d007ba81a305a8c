"""GeoDNS records from the gateway's config, computed by the router itself (pure, no I/O).

``tables`` asks ``routing.router.route`` which regions a client in each country and continent
should enter, in failover order; ``powerdns`` writes that as a BIND zone with PowerDNS LUA
records (health from each region's ``/readyz``), ``route53`` as Route 53 record sets for
Terraform. ``geogate dns export`` (``gateway.cli.dns``) reads the config and writes the files.
"""
