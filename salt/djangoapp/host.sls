# The host around the apps, each part as the pillar says: firewall, sshd, fail2ban,
# automatic security updates, nightly database dumps, log rotation and monitoring.
# A part the pillar turns off is switched off on the host (off/<part>.sls).
include:
  - .firewall
  - .ssh
  - .fail2ban
  - .auto_updates
  - .backups
  - .logrotate
  - .monitoring
