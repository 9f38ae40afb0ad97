"""Central controller: turns labelled nodes into simulated GPU nodes and records, per GPU, who
holds it and how busy it is."""
