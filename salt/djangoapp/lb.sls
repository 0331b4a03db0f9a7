{#- The lb role: HAProxy in front of the web minions of the fleet (found in the Salt
    mine), one backend per app chosen by its server names, each web minion checked
    through its own Nginx at the app's health path. lb.json tells djangoapp.lb_server
    (drain, ready) where the runtime API is and which backend serves which app. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set lb = djangoapp.lb %}

{%- if "lb" in djangoapp.fleet.roles %}

include:
  - .packages

djangoapp-lb-haproxy-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.haproxy | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-lb-haproxy-config-file-managed:
  file.managed:
    - name: {{ lb.config_file }}
    - source: salt://{{ tpldir }}/files/haproxy.cfg.jinja
    - template: jinja
    - mode: "0644"
    # HAProxy reads the candidate before it replaces the file in place.
    - check_cmd: haproxy -c -f
    - context:
        lb: {{ lb | json }}
        backends: {{ djangoapp.lb_backends | json }}
    - require:
      - pkg: djangoapp-lb-haproxy-package-installed

djangoapp-lb-settings-file-serialized:
  file.serialize:
    - name: {{ djangoapp.paths.config_root }}/lb.json
    - serializer: json
    - makedirs: true
    - mode: "0644"
    - dataset:
        socket: {{ lb.socket | json }}
        drain_timeout: {{ djangoapp.fleet.drain_timeout }}
        backends:
{%-   for backend in djangoapp.lb_backends %}
          {{ backend.app }}: {{ backend.name }}
{%-   endfor %}

djangoapp-lb-haproxy-service-running:
  service.running:
    - name: haproxy
    - enable: true
    # A reload hands the listening sockets to new processes: no connection refused.
    - reload: true
    - watch:
      - file: djangoapp-lb-haproxy-config-file-managed
{%- endif %}
