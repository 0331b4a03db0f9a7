---
base:
  '*':
    - demo
    - stack
