# Everything, in order: host packages, the databases and caches, each app's release,
# the process manager that runs Gunicorn, then certificates and Nginx in front of it.
include:
  - .proxy
  - .packages
  - .tools
  - .postgresql
  - .mariadb
  - .cache
  - .app
  - .release
  - .process
  - .selinux
  - .tls
  - .nginx
  - .acme
  - .host
