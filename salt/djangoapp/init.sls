# Everything, in order: host packages, the databases and caches, each app's release,
# the process manager that runs Gunicorn, then certificates and Nginx in front of it
# and, on a load balancer of a fleet, HAProxy in front of the web minions; the apps
# the pillar marks absent are taken down.
{#- The map checks the pillar: a bad one stops the render here, once, before any
    included file is rendered. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
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
  - .lb
  - .absent
  - .acme
  - .host
