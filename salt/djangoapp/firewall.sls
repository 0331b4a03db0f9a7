{#- The host's input firewall, when the pillar turns it on (`djangoapp:firewall`).
    Debian: an nftables table of our own (`inet djangoapp`) loaded by the
    djangoapp-firewall service: input policy drop; established and related traffic,
    loopback, ICMP and the `allow` ports accepted. Outgoing traffic (the minion's
    connection to its master included) and other tables (fail2ban's) are left alone.
    RedHat: firewalld, with the `allow` ports and nothing else open in `zone`; both
    let the Salt master's packets in (below). The ports of the monitoring agents
    that are on (`djangoapp.monitoring_ports`, derived by djangoapp.derive_settings)
    and, in a fleet, the database and cache ports (to the web minions) and the web
    minions' HTTP port (to the load balancers) (`djangoapp.fleet_ports`) are open to
    their allowed sources only: rules matching the source address (nftables), rich
    rules (firewalld). #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set firewall = djangoapp.firewall %}

{%- if firewall.enabled %}
{%-   set ports = {"tcp": [], "udp": []} %}
{%-   for entry in firewall.allow %}
{%-     set port, _, protocol = (entry | string).partition("/") %}
{%-     do ports[protocol or "tcp"].append(port | int) %}
{%-   endfor %}
{%-   set restricted_ports = [] %}
{%-   for entry in djangoapp.monitoring_ports + djangoapp.fleet_ports %}
{%-     set rule = {"protocol": entry.protocol, "port": entry.port, "ip": [], "ip6": []} %}
{%-     for source in entry.sources %}
{%-       do rule["ip6" if ":" in source else "ip"].append(source) %}
{%-     endfor %}
{%-     do restricted_ports.append(rule) %}
{%-   endfor %}

include:
  - .packages

djangoapp-firewall-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.firewall | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

{#-   The minion's connections to its master were opened before the firewall, when
      nothing tracked connections in this network namespace: the master's next
      packets would not count as established, so packets from the master's ports
      are let in by a rule of their own. #}
{%-   set salt_master = none %}
{#-   master_ip is set once the minion has connected to a master (never masterless). #}
{%-   if opts.get("master_type") != "disable" and opts.get("master_ip") %}
{%-     set salt_master = {
          "address": opts.master_ip,
          "family": "ipv6" if ":" in opts.master_ip else "ipv4",
          "ports": [opts.get("publish_port", 4505), opts.get("master_port", 4506)]
            | map("int") | unique | sort | list,
        } %}
{%-   endif %}

{%-   if firewall.backend == "nftables" %}
{%-     set ruleset = djangoapp.paths.config_root ~ "/firewall.nft" %}

djangoapp-firewall-ruleset-file-managed:
  file.managed:
    - name: {{ ruleset }}
    - source: salt://{{ tpldir }}/files/firewall-nftables.conf.jinja
    - template: jinja
    - makedirs: true
    - mode: "0644"
    # The candidate file is parsed and checked by the kernel before it replaces
    # the one in place.
    - check_cmd: {{ firewall.nft }} --check --file
    - context:
        tcp_ports: {{ ports.tcp | unique | sort | json }}
        udp_ports: {{ ports.udp | unique | sort | json }}
        salt_master: {{ salt_master | json }}
        restricted_ports: {{ restricted_ports | json }}
    - require:
      - pkg: djangoapp-firewall-packages-installed

djangoapp-firewall-service-unit-file-managed:
  file.managed:
    - name: /etc/systemd/system/djangoapp-firewall.service
    - source: salt://{{ tpldir }}/files/firewall-systemd.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        nft: {{ firewall.nft | json }}
        ruleset: {{ ruleset | json }}

djangoapp-firewall-service-running:
  service.running:
    - name: djangoapp-firewall
    - enable: true
    # A reload loads the file again: the table is replaced in one transaction.
    - reload: true
    - watch:
      - file: djangoapp-firewall-ruleset-file-managed
      - file: djangoapp-firewall-service-unit-file-managed
{%-   else %}

djangoapp-firewall-service-running:
  service.running:
    - name: {{ firewall.service }}
    - enable: true
    - require:
      - pkg: djangoapp-firewall-packages-installed

{#-     firewalld may have run before us (RHEL enables it): this record says that
        the formula turned it on and what zone it manages, for off/firewall.sls. #}

djangoapp-firewall-zone-record-file-managed:
  file.managed:
    - name: {{ djangoapp.paths.config_root }}/firewalld-managed
    - makedirs: true
    - mode: "0644"
    - contents: |
        # Managed by Salt (djangoapp): firewalld is on for djangoapp's firewall,
        # zone {{ firewall.zone }}. Switching it off removes what was added there.

djangoapp-firewall-zone-present:
  firewalld.present:
    - name: {{ firewall.zone }}
    - ports:
{%-     for protocol in ["tcp", "udp"] %}
{%-       for port in ports[protocol] | unique | sort %}
      - {{ port }}/{{ protocol }}
{%-       endfor %}
{%-     endfor %}
    - prune_ports: true
    # The zone's services (ssh, cockpit, dhcpv6-client) go: `allow` says it all.
    - services: []
    - prune_services: true
    # The Salt master (see above). firewalld matches no TCP flags: the master's
    # ports are its only source ports let in.
{%-     set rich_rules = [] %}
{%-     for port in (salt_master or {}).get("ports", []) %}
{%-       do rich_rules.append('rule family="%s" source address="%s" source-port port="%s" protocol="tcp" accept'
            | format(salt_master.family, salt_master.address, port)) %}
{%-     endfor %}
{%-     for rule in restricted_ports %}
{%-       for family, sources in [("ipv4", rule.ip), ("ipv6", rule.ip6)] %}
{%-         for source in sources %}
{%-           do rich_rules.append('rule family="%s" source address="%s" port port="%s" protocol="%s" accept'
                | format(family, source, rule.port, rule.protocol)) %}
{%-         endfor %}
{%-       endfor %}
{%-     endfor %}
    - rich_rules: {{ rich_rules | json }}
    - prune_rich_rules: true
    - require:
      - service: djangoapp-firewall-service-running
{%-   endif %}
{%- else %}

include:
  - .off.firewall
{%- endif %}
