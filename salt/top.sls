---
base:
  '*':
    - djangoapp
