"""One router per API resource; each only translates HTTP to calls on the serving layer."""
