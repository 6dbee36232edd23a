"""Per variant: the stages models, generator, template, tokenize, train and export, and what they share."""
