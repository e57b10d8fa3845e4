"""The HTML report of a run: inline-SVG plots of outputs, node figures and the plan."""
