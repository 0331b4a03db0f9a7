{#- Monitoring of the host and its apps, each agent when the pillar turns it on
    (`djangoapp:monitoring`): NRPE for Nagios, the Zabbix agent, and snmpd for
    LibreNMS. The firewall (firewall.sls) opens their ports to the allowed sources
    only. The Sentry DSN of the same section reaches the apps through their
    environment (map.jinja). #}
include:
  - .monitoring_checks
  - .nrpe
  - .zabbix
  - .snmp
