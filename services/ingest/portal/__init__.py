"""The customer usage portal's page: HTML rendered from `service_layer.portal.PortalPage`."""
