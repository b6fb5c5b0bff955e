"""The recipe: schema (`schema`), safe YAML with line numbers (`yaml_loader`), loading (`load`)."""
