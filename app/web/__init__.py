"""HTTP plumbing that is not a route: the request body limit, the operators' console."""
