# The host around the apps, each part as the pillar says: firewall, sshd, fail2ban,
# automatic security updates, nightly database dumps, log rotation and monitoring.
include:
  - .firewall
  - .ssh
  - .fail2ban
  - .auto_updates
  - .backups
  - .logrotate
  - .monitoring
