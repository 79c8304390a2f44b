"""One record of each platform in its documented shape (Shopify's GraphQL
AbandonedCheckout and REST checkout, a WooCommerce order, a custom cart), as the
normaliser and fuzz tests start from; keyword arguments replace top-level fields."""

from __future__ import annotations

from typing import Any


def graphql_node(**changes: Any) -> dict[str, Any]:
    node: dict[str, Any] = {
        "id": "gid://shopify/AbandonedCheckout/123",
        "name": "#123",
        "abandonedCheckoutUrl": "https://acme.example.com/checkouts/ac/abc/recover",
        "createdAt": "2026-11-23T08:10:00Z",
        "updatedAt": "2026-11-23T08:25:00Z",
        "completedAt": None,
        "customer": {
            "id": "gid://shopify/Customer/77",
            "firstName": "Ada",
            "lastName": "Lovelace",
            "defaultEmailAddress": {"emailAddress": "ada@example.com",
                                    "marketingState": "SUBSCRIBED"},
            "defaultPhoneNumber": {"phoneNumber": "+15550100"},
        },
        "totalPriceSet": {"shopMoney": {"amount": "59.97", "currencyCode": "USD"}},
        "lineItems": {
            "nodes": [
                {
                    "title": "Mug",
                    "variantTitle": "Large",
                    "sku": "MUG-L",
                    "quantity": 3,
                    "variant": {"id": "gid://shopify/ProductVariant/9"},
                    "product": {"id": "gid://shopify/Product/8"},
                    "originalUnitPriceSet": {
                        "shopMoney": {"amount": "19.99", "currencyCode": "USD"}
                    },
                }
            ]
        },
    }
    node.update(changes)
    return node


def rest_checkout(**changes: Any) -> dict[str, Any]:
    checkout: dict[str, Any] = {
        "id": 450789469,
        "email": "bob@example.net",
        "phone": None,
        "buyer_accepts_marketing": True,
        "abandoned_checkout_url": "https://acme.example.com/recover/450789469",
        "created_at": "2026-11-23T08:10:00-05:00",
        "updated_at": "2026-11-23T08:25:00-05:00",
        "completed_at": None,
        "currency": "USD",
        "total_price": "398.00",
        "customer": {
            "id": 207119551,
            "email": "bob@example.net",
            "first_name": "Bob",
            "last_name": "Norman",
            "phone": None,
        },
        "line_items": [
            {
                "title": "IPod Nano",
                "variant_title": "Default Title",
                "quantity": 2,
                "price": "199.00",
                "variant_id": 39072856,
                "product_id": 632910392,
                "sku": "IPOD2008PINK",
            }
        ],
    }
    checkout.update(changes)
    return checkout


def woo_order(**changes: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "id": 727,
        "number": "727",
        "status": "pending",
        "currency": "EUR",
        "date_created_gmt": "2026-11-23T08:10:00",
        "date_modified_gmt": "2026-11-23T08:25:00",
        "date_paid_gmt": None,
        "date_completed_gmt": None,
        "total": "59.97",
        "customer_id": 0,
        "billing": {"first_name": "Cy", "last_name": "Young", "email": "", "phone": "+4930123"},
        "line_items": [
            {
                "name": "Mug",
                "product_id": 93,
                "variation_id": 0,
                "quantity": 3,
                "subtotal": "59.97",
                "total": "59.97",
                "sku": "",
                "price": 19.99,
            }
        ],
        "meta_data": [],
        "payment_url": "https://acme.example.com/checkout/order-pay/727/?pay_for_order=true",
    }
    order.update(changes)
    return order


def custom_cart(**changes: Any) -> dict[str, Any]:
    cart: dict[str, Any] = {
        "cart_id": "c-1",
        "customer": {
            "id": "u-1",
            "email": "dee@example.org",
            "first_name": "Dee",
            "last_name": None,
            "phone": None,
            "accepts_marketing": True,
        },
        "items": [
            {
                "product_id": "p-1",
                "variant_id": None,
                "sku": "S1",
                "title": "Pen",
                "quantity": 3,
                "unit_price": 0.1,
                "line_total": 0.3,
            }
        ],
        "currency": "usd",
        "total_value": None,
        "created_at": "2026-11-23T08:10:00Z",
        "abandoned_at": "2026-11-23T08:25:00Z",
        "recovery_url": "https://shop.example.com/r/c-1",
    }
    cart.update(changes)
    return cart
