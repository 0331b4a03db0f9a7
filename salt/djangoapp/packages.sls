{%- from tpldir ~ "/map.jinja" import djangoapp with context %}

include:
  - .proxy

{%- if djangoapp.pkgs.get("repos") %}

djangoapp-package-repositories-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.repos | json }}
    - require:
      - sls: {{ tpldir }}.proxy
    - require_in:
      - pkg: djangoapp-base-packages-installed
{%- endif %}

djangoapp-base-packages-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.base | json }}
    - require:
      - sls: {{ tpldir }}.proxy
