"""The recipe: schema (`schema`), loading with `file:line key` errors (`load`), checks across stages (`chain`), the
Markdown reference (`docs`). Safe YAML lives below it, in `compress/safe_yaml.py` (device profiles use it too)."""
