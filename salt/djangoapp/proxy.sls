{#- Egress proxy for the package manager, as the OS family's parameters say
    (`package_proxy_style`): apt, a file of our own, removed when no proxy is set;
    dnf, the `proxy` option of dnf.conf. pip, uv and git get it from app.json. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set proxy = djangoapp.proxy %}

{%- if djangoapp.package_proxy_style == "apt" %}
{%-   if proxy.http or proxy.https %}
djangoapp-package-proxy-file-managed:
  file.managed:
    - name: {{ djangoapp.package_proxy_file }}
    - mode: "0644"
    - contents: |
{%-     for scheme in ["http", "https"] %}
{%-       if proxy[scheme] %}
        Acquire::{{ scheme }}::Proxy "{{ proxy[scheme] }}";
{%-       endif %}
{%-     endfor %}
{%-   else %}
djangoapp-package-proxy-file-managed:
  file.absent:
    - name: {{ djangoapp.package_proxy_file }}
{%-   endif %}

{%- elif djangoapp.package_proxy_style == "dnf" and (proxy.http or proxy.https) %}
djangoapp-package-proxy-file-managed:
  ini.options_present:
    - name: {{ djangoapp.package_proxy_file }}
    - sections:
        main:
          proxy: {{ (proxy.https or proxy.http) | json }}
{%- endif %}
