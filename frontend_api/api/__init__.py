"""HTTP routes and their dependencies: each router only translates HTTP to calls on the layers below."""
