"""Seed the eight e-commerce categories with keyword lists (editable in the admin afterwards)."""
from django.db import migrations

CATEGORIES = [
    ("shipping_logistics", "Shipping & logistics", "Carriers, rates, fulfilment, 3PLs, delivery and returns.",
     "shipping, shipment, carrier, fulfillment, fulfilment, 3pl, delivery, deliveries, returns label, usps, "
     "ups ground, ups rate, fedex, dhl, freight, warehouse, parcel, postage, last mile, label printing, customs"),
    ("pricing_margins", "Pricing & margins", "Prices, fees, tariffs, discounts and unit economics.",
     "pricing, price increase, price hike, margin, discount, profit, fees, fee increase, tariff, cogs, markup, "
     "unit economics, price war, break-even, cost of goods, surcharge, duties, import duty"),
    ("conversion_optimization", "Conversion optimisation", "Turning visitors into buyers: pages, checkout, tests.",
     "conversion rate, conversions, checkout, landing page, a/b test, ab test, split test, cart abandonment, "
     "abandoned cart, product page, cro, bounce rate, add to cart, add-to-cart, upsell, page speed"),
    ("ads_marketing", "Ads & marketing", "Paid ads, organic reach, influencers and creative.",
     "meta ads, facebook ads, instagram ads, google ads, tiktok ads, pinterest ads, amazon ads, ppc, roas, cpm, "
     "cpc, influencer, ad creative, campaign, seo, organic traffic, advertising, ugc, affiliate"),
    ("inventory_management", "Inventory management", "Stock levels, forecasting, reorders and dead stock.",
     "inventory, stockout, stock-out, out of stock, overstock, reorder, sku, forecasting, demand forecast, "
     "dead stock, safety stock, stock levels, storage fees, capacity limit, restock"),
    ("customer_retention", "Customer retention", "Repeat buyers, loyalty, email and subscriptions.",
     "retention, repeat customer, repeat buyer, repeat purchase, loyalty, email flow, email list, klaviyo, sms, "
     "subscription, churn, lifetime value, ltv, reviews, win-back, winback, customer service, returning customer"),
    ("product_sourcing", "Product sourcing", "Suppliers, manufacturers, samples and private label.",
     "supplier, sourcing, manufacturer, manufacturing, alibaba, 1688, moq, samples, private label, factory, "
     "factories, wholesale, product research, quality control, trade show"),
    ("platform_tools", "Platforms & tools", "Shopify, Amazon, Etsy, WooCommerce and the apps around them.",
     "shopify, seller central, amazon seller, woocommerce, bigcommerce, etsy, ebay, tiktok shop, plugin, "
     "integration, api, platform update, policy change, shopify app, app store, automation, ai tool"),
]


def seed(apps, schema_editor):
    Category = apps.get_model("topics", "Category")
    for position, (slug, name, description, keywords) in enumerate(CATEGORIES):
        Category.objects.update_or_create(
            slug=slug,
            defaults={
                "name": name,
                "description": description,
                "keywords": "\n".join(k.strip() for k in keywords.split(",")),
                "position": position,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("topics", "Category").objects.filter(slug__in=[c[0] for c in CATEGORIES]).delete()


class Migration(migrations.Migration):
    dependencies = [("topics", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
