return { ALL = "all" }
