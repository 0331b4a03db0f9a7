{#- The cache servers the apps ask for (`cache.engine`), on a minion with the cache
    role (`djangoapp.cache_engines`), shared by the apps and listening on loopback
    only: Redis (each app has a database number of its own, in its REDIS_URL) and
    memcached (MEMCACHED_URL; apps share it, so each app should give its cache a key
    prefix). On the cache minion of a fleet they listen on its private address too,
    Redis with the pillar's password. #}
{%- from tpldir ~ "/map.jinja" import djangoapp with context %}
{%- set redis = djangoapp.redis %}
{%- set memcached = djangoapp.memcached %}
{%- set engines = djangoapp.cache_engines %}

include:
  - .packages

{%- if "redis" in engines %}

djangoapp-redis-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.redis | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-redis-settings-file-managed:
  file.managed:
    - name: {{ redis.include_file }}
    - user: root
    - group: {{ redis.group }}
    - mode: "0640"
    - contents: |
        # Managed by Salt (djangoapp). Included at the end of {{ redis.conf_file }},
        # so these settings win over the ones above the include.
        bind {{ redis.bind }}
        protected-mode yes
        port {{ redis.port }}
        databases {{ redis.databases }}
{%-   if redis.password %}
        requirepass {{ redis.password }}
{%-   endif %}
    - require:
      - pkg: djangoapp-redis-package-installed

djangoapp-redis-settings-file-included:
  file.append:
    - name: {{ redis.conf_file }}
    - text: include {{ redis.include_file }}
    - require:
      - file: djangoapp-redis-settings-file-managed

djangoapp-redis-service-running:
  service.running:
    - name: {{ redis.service }}
    - enable: true
    - watch:
      - file: djangoapp-redis-settings-file-managed
      - file: djangoapp-redis-settings-file-included
{%- endif %}

{%- if "memcached" in engines %}

djangoapp-memcached-package-installed:
  pkg.installed:
    - pkgs: {{ djangoapp.pkgs.memcached | json }}
    - require:
      - pkg: djangoapp-base-packages-installed

djangoapp-memcached-settings-file-managed:
  file.managed:
    - name: {{ memcached.conf_file }}
    - user: root
    - group: root
    - mode: "0644"
    - contents: |
{%-   if memcached.conf_style == "sysconfig" %}
        # Managed by Salt (djangoapp): loopback (and the fleet's network), no UDP.
        PORT="{{ memcached.port }}"
        USER="{{ memcached.user }}"
        MAXCONN="{{ memcached.max_connections }}"
        CACHESIZE="{{ memcached.memory_mb }}"
        OPTIONS="-l {{ memcached.listen | join(",") }} -U 0"
{%-   else %}
        # Managed by Salt (djangoapp): loopback (and the fleet's network), no UDP.
        -d
        logfile /var/log/memcached.log
        -m {{ memcached.memory_mb }}
        -p {{ memcached.port }}
        -u {{ memcached.user }}
        -l {{ memcached.listen | join(",") }}
        -U 0
        -c {{ memcached.max_connections }}
        -P /var/run/memcached/memcached.pid
{%-   endif %}
    - require:
      - pkg: djangoapp-memcached-package-installed

djangoapp-memcached-service-running:
  service.running:
    - name: {{ memcached.service }}
    - enable: true
    - watch:
      - file: djangoapp-memcached-settings-file-managed
{%- endif %}
