-- The application tables (README "The database"), for new installs and the demo.
CREATE TABLE IF NOT EXISTS companies (
    id uuid PRIMARY KEY, name text NOT NULL,
    website text, email text, phone text);
CREATE TABLE IF NOT EXISTS company_agents (
    id uuid PRIMARY KEY, company_id uuid NOT NULL REFERENCES companies(id),
    name text NOT NULL, template_slug text NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    settings jsonb NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS agent_integrations (
    id uuid PRIMARY KEY, agent_id uuid NOT NULL REFERENCES company_agents(id),
    platform text NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    config jsonb NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS agent_integrations_agent ON agent_integrations (agent_id);
