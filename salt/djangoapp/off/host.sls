{#- Every host feature of host.sls and monitoring.sls switched off, whatever the
    pillar says (clean.sls includes it): services stopped and disabled, the
    formula's configuration files removed; packages and the database dumps stay. #}
include:
  - .firewall
  - .ssh
  - .fail2ban
  - .auto_updates
  - .backups
  - .logrotate
  - .nrpe
  - .zabbix
  - .snmp
  - .monitoring_checks
