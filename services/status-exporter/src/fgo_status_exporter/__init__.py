"""dcgm-exporter compatible metrics and GPU feature discovery labels, per node and for KWOK
nodes."""
