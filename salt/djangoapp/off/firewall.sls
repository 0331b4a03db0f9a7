{#- The firewall switched off (`djangoapp:firewall:enabled: false`, and clean.sls),
    where the formula had turned it on. Debian: the djangoapp-firewall service
    stopped and disabled (its ExecStop deletes our table), our table `inet
    djangoapp` deleted from the running ruleset if it is still there, the unit and
    the ruleset file removed; other tables (fail2ban's, the user's) are left alone.
    RedHat, where the record of firewall.sls says the formula turned firewalld on:
    the `allow` ports and the rich rules that firewall.sls added (the monitoring
    agents' sources, the Salt master) removed from the zone, whose other settings
    stay, then firewalld stopped and disabled; a firewalld the formula did not turn
    on is left alone. The services that firewall.sls pruned from the zone (ssh among
    them) do not come back: add yours before starting firewalld again. The packages
    stay installed. Nothing to do on a host that never had it. #}
{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import djangoapp with context %}
{%- set firewall = djangoapp.firewall %}

{%- if firewall.backend == "nftables" %}
{%-   set unit = "/etc/systemd/system/djangoapp-firewall.service" %}

djangoapp-firewall-service-dead:
  service.dead:
    - name: djangoapp-firewall
    - enable: false
    # The unit is ours: nothing to stop without it (test mode included).
    - onlyif: test -e {{ unit }}

djangoapp-firewall-nftables-table-absent:
  cmd.run:
    - name: {{ firewall.nft }} delete table inet djangoapp
    # Fails (nothing to do) without nft, or without our table.
    - onlyif: {{ firewall.nft }} list table inet djangoapp
    - require:
      - service: djangoapp-firewall-service-dead

djangoapp-firewall-service-unit-file-absent:
  file.absent:
    - name: {{ unit }}
    - require:
      - service: djangoapp-firewall-service-dead

djangoapp-firewall-ruleset-file-absent:
  file.absent:
    - name: {{ djangoapp.paths.config_root }}/firewall.nft
    - require:
      - cmd: djangoapp-firewall-nftables-table-absent

djangoapp-firewall-systemd-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: djangoapp-firewall-service-unit-file-absent
{%- else %}
{%-   set record = djangoapp.paths.config_root ~ "/firewalld-managed" %}
{#-   What firewall.sls opens: the `allow` ports, a rich rule per source of each
      monitoring agent's port, and one per Salt master port (by source port). #}
{%-   set items = [] %}
{%-   for entry in firewall.allow %}
{%-     set port, _, protocol = (entry | string).partition("/") %}
{%-     do items.append("port:%s/%s" | format(port | int, protocol or "tcp")) %}
{%-   endfor %}
{%-   for part, protocol in [("nrpe", "tcp"), ("zabbix", "tcp"), ("snmp", "udp")] %}
{%-     do items.append("rule:%s/%s" | format(djangoapp.monitoring[part].port | int, protocol)) %}
{%-   endfor %}
{%-   for port in [opts.get("publish_port", 4505), opts.get("master_port", 4506)]
        | map("int") | unique | sort %}
{%-     do items.append("source-rule:%s/tcp" | format(port)) %}
{%-   endfor %}

djangoapp-firewall-zone-rules-absent:
  cmd.script:
    - source: salt://{{ tplroot }}/files/firewalld-remove-ours.sh
    - args: {{ ([firewall.zone] + (items | unique | list)) | join(" ") }}
    # The script's last line says whether it removed anything.
    - stateful: true
    - onlyif: test -e {{ record }}

djangoapp-firewall-service-dead:
  service.dead:
    - name: {{ firewall.service }}
    - enable: false
    - onlyif: test -e {{ record }}
    - require:
      - cmd: djangoapp-firewall-zone-rules-absent

djangoapp-firewall-zone-record-file-absent:
  file.absent:
    - name: {{ record }}
    - require:
      - service: djangoapp-firewall-service-dead
{%- endif %}
