{#- The rolling release of an app across the fleet, run on the master:
      salt-run state.orchestrate djangoapp.orchestrate.release \
          pillar='{"app": "shop", "version": "v1.1.0", "batch": 1}'
    djangoapp_fleet.release does the work (see _runners/djangoapp_fleet.py). #}
djangoapp-fleet-release-rolled-out:
  salt.runner:
    - name: djangoapp_fleet.release
    - app: {{ pillar["app"] | json }}
    - version: {{ pillar["version"] | json }}
    - batch: {{ pillar.get("batch", 1) | json }}
