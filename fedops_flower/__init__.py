"""Code that runs inside Flower's own app processes: the ServerApp wrapper (``flwr-serverapp``,
launched by the run's SuperExec beside the control service) and the ClientApp wrapper
(``flwr-clientapp``, launched by each SuperNode's SuperExec on a device). Imports Flower,
``fedops_common`` and nothing of the control service or the agent."""
