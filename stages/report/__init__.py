"""The report stage and its document, inputs, plots and sections."""
