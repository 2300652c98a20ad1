"""Running studies on a Ray cluster: configs (autoscaler, KubeRay, runtime env), the shared MLflow
server, a placement probe, and a loopback cluster of real ``ray start`` nodes for tests.

See docs/CLUSTER.md.
"""
