{#- Rotation of the apps' logs, /var/log/djangoapp/<app>/*.log (Gunicorn's output, kept
    by Supervisor or systemd, and whatever the app writes there): `copytruncate`, as
    the writers keep their files open. Nginx's per-app logs are in /var/log/nginx,
    which the distribution's own nginx rotation already covers. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set logrotate = djangoapp.logrotate %}

{%- if logrotate.enabled %}

include:
  - .packages

djangoapp-logrotate-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.logrotate | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-logrotate-config-file-managed:
  file.managed:
    - name: /etc/logrotate.d/djangoapp
    - mode: "0644"
    - contents: |
        # Managed by Salt (djangoapp): the apps' logs.
        {{ djangoapp.paths.log_root }}/*/*.log {
            {{ logrotate.frequency }}
            rotate {{ logrotate.rotate }}
            missingok
            notifempty
            compress
            delaycompress
            copytruncate
        }
    - require:
      - pkg: djangoapp-logrotate-package-installed

djangoapp-logrotate-timer-running:
  service.running:
    - name: {{ logrotate.timer }}
    - enable: true
    - require:
      - pkg: djangoapp-logrotate-package-installed
{%- else %}

include:
  - .off.logrotate
{%- endif %}
