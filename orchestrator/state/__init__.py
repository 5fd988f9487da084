"""Everything the orchestrator keeps in Redis: keys, executions, leases, hosts, sessions,
subnets and live logs. Imports redis-py objects as parameters, never docker."""
