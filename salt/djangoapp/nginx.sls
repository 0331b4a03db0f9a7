{#- Nginx in front of each app, on a minion with the web role: static and media files
    served from disk, everything else proxied to the app's Gunicorn socket. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- if "web" in djangoapp.fleet.roles %}
{%- set nginx = djangoapp.nginx %}
{%- set check_script = djangoapp.paths.lib_dir ~ "/nginx-check-site" %}
{#- The certificate states of tls.sls: a new certificate or key reloads Nginx. #}
{%- set tls_state_ids = [] %}
{%- for app in djangoapp.apps.values() if app.tls.enabled %}
{%-   if app.tls.mode == "provided" %}
{%-     do tls_state_ids.append({"file": "djangoapp-" ~ app.name ~ "-tls-certificate-file-managed"}) %}
{%-     do tls_state_ids.append({"file": "djangoapp-" ~ app.name ~ "-tls-key-file-managed"}) %}
{%-   else %}
{%-     do tls_state_ids.append({"cmd": "djangoapp-" ~ app.name ~ "-tls-certificate-generated"}) %}
{%-   endif %}
{%- endfor %}

include:
  - .packages
  - .release
  - .process
  - .tls
{%- if djangoapp.selinux_active and djangoapp.apps %}
  - .selinux
{%- endif %}

djangoapp-nginx-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.nginx | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

{%- if nginx.site_enabled_dir %}

djangoapp-nginx-distribution-default-site-absent:
  file.absent:
    - name: {{ nginx.site_enabled_dir }}/default
    - require:
      - pkg: djangoapp-nginx-package-installed
    - require_in:
      - cmd: djangoapp-nginx-config-tested
{%- endif %}

djangoapp-nginx-http-settings-file-managed:
  file.managed:
    - name: {{ nginx.conf_dir }}/djangoapp.conf
    - source: salt://{{ tpldir }}/files/nginx-http.conf.jinja
    - template: jinja
    - mode: "0644"
    - context:
        nginx: {{ nginx | json }}
        tls_apps: {{ djangoapp.tls_apps | json }}
    - require:
      - pkg: djangoapp-nginx-package-installed
      - file: djangoapp-nginx-tls-settings-file-managed

djangoapp-nginx-check-site-file-managed:
  file.managed:
    - name: {{ check_script }}
    - source: salt://{{ tpldir }}/files/nginx-check-site.py
    - makedirs: true
    - mode: "0755"

djangoapp-nginx-tls-settings-file-managed:
  file.managed:
    - name: {{ nginx.tls_settings_file }}
    - mode: "0644"
    - contents: |
        # Managed by Salt (djangoapp): Mozilla's intermediate TLS profile, included by
        # every HTTPS server of the djangoapp sites.
        ssl_protocols {{ djangoapp.tls.protocols }};
        ssl_ecdh_curve {{ djangoapp.tls.ecdh_curve }};
        ssl_ciphers {{ djangoapp.tls.ciphers }};
        ssl_prefer_server_ciphers off;
        ssl_session_timeout {{ djangoapp.tls.session_timeout }};
        ssl_session_cache {{ djangoapp.tls.session_cache }};
        ssl_session_tickets off;
    - require:
      - pkg: djangoapp-nginx-package-installed

{%- for name, app in djangoapp.apps.items() %}
{%-   set site_file = nginx.site_dir ~ "/" ~ app.service ~ ".conf" %}

{#- Each site is tested with the whole configuration before it is written (check_cmd:
    a copy of the config dir with the candidate in place): a site that Nginx would
    refuse fails its own state and is not installed; the others are, and Nginx takes
    them up (the test and the reload below depend on the sites by onchanges only,
    which a failed site does not hold back). #}
{%-   set enabled_file = nginx.site_enabled_dir ~ "/" ~ app.service ~ ".conf"
        if nginx.site_enabled_dir else "" %}

djangoapp-{{ name }}-nginx-site-file-managed:
  file.managed:
    - name: {{ site_file }}
    - source: salt://{{ tpldir }}/files/nginx-site.conf.jinja
    - template: jinja
    - mode: "0644"
    - context:
        app: {{ app | json }}
        nginx: {{ nginx | json }}
        tls_settings: {{ djangoapp.tls | json }}
    - check_cmd: >-
        {{ check_script }} --site {{ site_file }}
        {%- if enabled_file %} --enabled {{ enabled_file }}{% endif %}
    - tmp_ext: .conf
    - require:
      - pkg: djangoapp-nginx-package-installed
      - file: djangoapp-nginx-check-site-file-managed
      - file: djangoapp-nginx-http-settings-file-managed
{%-   if app.tls.enabled %}
      - sls: {{ tpldir }}.tls
{%-   endif %}
    {#- After the release (the site serves its STATIC_ROOT), and also when it failed:
        the site goes without static files until the app is released, and Nginx
        goes on with the other apps' sites. #}
    - require_any:
      - djangoapp: djangoapp-{{ name }}-release-deployed
      - pkg: djangoapp-nginx-package-installed
{%-   if enabled_file %}

djangoapp-{{ name }}-nginx-site-enabled:
  file.symlink:
    - name: {{ enabled_file }}
    - target: {{ site_file }}
    - require:
      - file: djangoapp-{{ name }}-nginx-site-file-managed
{%-   endif %}
{%- endfor %}

djangoapp-nginx-config-tested:
  cmd.run:
    - name: nginx -t -q
    - onchanges:
      - file: djangoapp-nginx-http-settings-file-managed
      - file: djangoapp-nginx-tls-settings-file-managed
{%- for name in djangoapp.apps %}
      - file: djangoapp-{{ name }}-nginx-site-file-managed
{%-   if nginx.site_enabled_dir %}
      - file: djangoapp-{{ name }}-nginx-site-enabled
{%-   endif %}
{%- endfor %}
{%- for id in tls_state_ids %}
      - {{ id | json }}
{%- endfor %}

djangoapp-nginx-service-running:
  service.running:
    - name: {{ nginx.service }}
    - enable: true
    - reload: true
    - require:
      - cmd: djangoapp-nginx-config-tested
{%- if djangoapp.selinux_active and djangoapp.apps %}
      - sls: {{ tpldir }}.selinux
{%- endif %}
    - watch:
      - cmd: djangoapp-nginx-config-tested
      - file: djangoapp-nginx-http-settings-file-managed
      - file: djangoapp-nginx-tls-settings-file-managed
{%- for id in tls_state_ids %}
      - {{ id | json }}
{%- endfor %}
{%- for name, app in djangoapp.apps.items() %}

{#- A release that state.apply made, the first one included, is judged as every later
    release is: once Gunicorn and Nginx serve it, its health path answers healthy. #}
djangoapp-{{ name }}-release-health-checked:
  module.run:
    - djangoapp.health:
      - app: {{ name }}
    - onchanges:
      - djangoapp: djangoapp-{{ name }}-release-deployed
    - require:
      - service: djangoapp-nginx-service-running
      - {{ "cmd" if app.process_manager == "supervisor" else "service" }}: djangoapp-{{ name }}-gunicorn-running
{%- endfor %}
{%- endif %}
