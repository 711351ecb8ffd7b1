-- streamhost as an external component (XEP-0114) of Prosody.
--
-- Add this to prosody.cfg.lua after the VirtualHost of your domain, with your proxy's
-- JID (a subdomain of the VirtualHost, so that Prosody lists it in the host's
-- disco#items) and a long random secret that equals streamhost's `component.secret`.
-- Prosody accepts components on port 5347 (`component_ports`), on loopback by default
-- (`component_interfaces`); XEP-0114 is not encrypted, so keep it on loopback or a
-- private link. Across hosts, use TLS: load mod_net_multiplex, open a direct-TLS port
-- (`ssl_ports = { 5223 }` with `ssl = { certificate = ...; key = ... }`), which routes
-- component streams to this component, and set streamhost's `component.tls = true`
-- with `server` on that port (tests/component_tls.rs runs exactly this).
--
-- Do not also load mod_proxy65 for the same JID.

Component "proxy.example.org"
    component_secret = "CHANGE-ME"
    -- Upgrades (README "Upgrades"): the new streamhost process logs in while the old one
    -- is still connected; the old link must give way to it, not the new one be refused.
    component_conflict_resolve = "kick_old"
