"""The six scenarios of issue 10, each a module with NAME, TITLE, NEEDS_CLUSTER and run()."""
