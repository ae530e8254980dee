SELECT pg_notify('relay_deliveries', '')
