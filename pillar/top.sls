---
base:
  '*':
    - demo
