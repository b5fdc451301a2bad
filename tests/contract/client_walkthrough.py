"""Drives the API through the client that openapi-python-client generates
from /openapi.json, used as generated: deploy an agent, read its health,
list tokens. Prints a JSON summary as its last line.

Usage: client_walkthrough.py BASE_URL TOKEN
"""

import json
import sys

from agentstead_client import AuthenticatedClient
from agentstead_client.api.agents import deploy_agent, get_agent_health
from agentstead_client.api.tokens import list_tokens
from agentstead_client.models import (
    Agent,
    AgentHealth,
    AgentStatusName,
    DeployRequest,
    DeployRequestAgentType,
    DeployRequestRegion,
    ErrorBody,
    TokenList,
)


def main() -> None:
    base_url, token = sys.argv[1], sys.argv[2]
    client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)

    # The document lists the agent types and regions this server accepts,
    # so they are enumerations in the client.
    request = DeployRequest(agent_type=DeployRequestAgentType.TESTKIT, region=DeployRequestRegion.EU, name="from-python")
    deployed = deploy_agent.sync_detailed(client=client, body=request, wait=True)
    if deployed.status_code != 201 or not isinstance(deployed.parsed, Agent):
        raise SystemExit(f"deploy returned {deployed.status_code}: {deployed.content!r}")
    agent = deployed.parsed
    if agent.status != AgentStatusName.ONLINE:
        raise SystemExit(f"agent {agent.id} is {agent.status}, not ONLINE")

    health = get_agent_health.sync(id=agent.id, client=client)
    if isinstance(health, ErrorBody) or not isinstance(health, AgentHealth):
        raise SystemExit(f"health failed: {health}")
    if not health.healthy or health.probe.http_status != 200:
        raise SystemExit(f"agent {agent.id} is not healthy: {health.to_dict()}")

    tokens = list_tokens.sync(client=client)
    if not isinstance(tokens, TokenList):
        raise SystemExit(f"listing tokens failed: {tokens}")
    names = [listed.name for listed in tokens.tokens]

    print(json.dumps({"agent": agent.id, "healthy": health.healthy, "tokens": len(names)}))


if __name__ == "__main__":
    main()
