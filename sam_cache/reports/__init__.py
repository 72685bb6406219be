"""Reports drawn from results files alone: tables, bar charts, example figures, training curves."""
