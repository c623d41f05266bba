"""Ad-platform webhooks: Meta Lead Ads and Google Ads lead forms."""
