# Everything, in order: host packages, the database, each app's release, then the
# process manager that runs Gunicorn and Nginx in front of it.
include:
  - .proxy
  - .packages
  - .tools
  - .postgresql
  - .app
  - .release
  - .process
  - .nginx
